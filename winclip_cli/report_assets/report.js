
(function(){
document.documentElement.classList.add('js');
document.addEventListener('click',function(e){
  var b=e.target.closest('button.toggle');if(!b)return;
  var c=b.closest('.card');var on=c.classList.toggle('show-original');
  b.setAttribute('aria-pressed',on?'true':'false');
  b.textContent=on?'Show overlay':'Show original';
});
var cards=Array.prototype.slice.call(document.querySelectorAll('.card'));
document.addEventListener('keydown',function(e){
  var c=e.target;if(!c.classList||!c.classList.contains('card'))return;
  var i=cards.indexOf(c),j=-1;
  if(e.key==='ArrowRight'||e.key==='ArrowDown')j=i+1;
  else if(e.key==='ArrowLeft'||e.key==='ArrowUp')j=i-1;
  else if(e.key==='Home')j=0;else if(e.key==='End')j=cards.length-1;
  else if(e.key==='o'){var t=c.querySelector('button.toggle');if(t)t.click();return;}
  else return;
  if(j>=0&&j<cards.length){e.preventDefault();cards[j].focus();}
});
var table=document.getElementById('rows');if(!table)return;
var body=table.tBodies[0],heads=Array.prototype.slice.call(table.tHead.rows[0].cells);
var rows=Array.prototype.slice.call(body.rows);
function col(name){
  for(var i=0;i<heads.length;i++)if(heads[i].dataset.col===name)return i;
  return -1;
}
var nameCol=col('path'),shown=document.getElementById('shown-count');
var more=document.getElementById('more'),PAGE=500,limit=PAGE;
/* every select in the controls filters its column (the verdict script adds one) */
var filters=Array.prototype.map.call(document.querySelectorAll('.controls select[data-col]'),
  function(s){return [s.id,col(s.dataset.col)];});
function text(row,c){return c<0?'':row.cells[c].textContent;}
/* Only the first PAGE matching rows are laid out (hidden rows cost the browser nothing):
   sorting and filtering 10,000 rows stays quick; "show more" reveals the rest. */
function apply(){
  var q=(document.getElementById('filter-name').value||'').toLowerCase(),n=0;
  var want=filters.map(function(f){
    var s=document.getElementById(f[0]);return [s?s.value:'*',f[1]];
  });
  for(var r=0;r<rows.length;r++){
    var row=rows[r],ok=true;
    for(var k=0;k<want.length&&ok;k++)ok=want[k][0]==='*'||text(row,want[k][1])===want[k][0];
    if(ok&&q)ok=text(row,nameCol).toLowerCase().indexOf(q)>=0;
    var hide=!ok||n>=limit;if(row.hidden!==hide)row.hidden=hide;if(ok)n++;
  }
  if(shown)shown.textContent=(n>limit?'first '+limit+' of '+n+' matching, ':n+' of ')+
    rows.length+' rows shown';
  if(more)more.hidden=n<=limit;
}
function refilter(){limit=PAGE;apply();}
['filter-name'].concat(filters.map(function(f){return f[0];})).forEach(function(id){
  var el=document.getElementById(id);
  if(el){el.addEventListener('input',refilter);el.addEventListener('change',refilter);}
});
if(more)more.addEventListener('click',function(){limit+=PAGE*4;apply();});
heads.forEach(function(th,i){
  th.addEventListener('click',function(){
    /* first click: highest first; a click on the column sorted so: lowest first */
    var asc=th.getAttribute('aria-sort')==='descending',num=th.dataset.type==='num';
    heads.forEach(function(h){h.setAttribute('aria-sort','none');});
    th.setAttribute('aria-sort',asc?'ascending':'descending');
    var keyed=rows.map(function(r,p){var t=r.cells[i].textContent,v;
      if(num){v=parseFloat(t);if(isNaN(v))v=asc?Infinity:-Infinity;}else v=t.toLowerCase();
      return [v,p,r];});
    keyed.sort(function(a,b){var d=a[0]<b[0]?-1:a[0]>b[0]?1:0;return (asc?d:-d)||a[1]-b[1];});
    rows=keyed.map(function(k){return k[2];});
    limit=Math.max(limit,PAGE);apply();  /* hide first, then move: less to lay out */
    var f=document.createDocumentFragment();
    rows.forEach(function(r){f.appendChild(r);});body.appendChild(f);
  });
});
apply();
})();
